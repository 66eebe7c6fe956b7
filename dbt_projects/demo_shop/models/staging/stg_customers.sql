with source as (

    select * from {{ source('demo_shop', 'customers') }}

),

renamed as (

    select
        customer_id::bigint                         as customer_id,
        trim(first_name)                            as first_name,
        trim(last_name)                             as last_name,
        trim(first_name) || ' ' || trim(last_name)  as full_name,
        lower(trim(email))                          as email,
        upper(trim(country))                        as country,
        signed_up_at

    from source

)

select * from renamed
